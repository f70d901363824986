FLASK_APP=service
